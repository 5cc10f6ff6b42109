"""The analyses shared by ``demo`` and the commands on a user's model: each adds figures,
tables and short texts to a :class:`Report`.

Every section uses the public classes and functions of captum_concepts only, the way a user
would, and the plotting functions of :mod:`captum_concepts.visualization`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional

import numpy as np
import torch
from torch import nn

from .. import visualization as viz
from ._report import Report

AGGREGATORS = ("mean", "abs", "var")


@dataclass
class Context:
    """What a section needs. ``images`` in ``[0, 1]``; ``model`` in eval mode on ``device``."""

    model: nn.Module
    report: Report
    fit_images: torch.Tensor  # examples to fit concepts on
    fit_labels: torch.Tensor
    eval_images: torch.Tensor  # held-out examples to explain / score
    eval_labels: torch.Tensor
    class_names: List[str]
    layers: List[str]  # source layers for attributions, scores and concepts
    embedding_layer: Optional[str]
    concept_layer: str
    random_model: Callable[[], nn.Module]  # same architecture, random weights
    device: torch.device
    seed: int
    quick: bool = False
    progress: bool = True
    n_score_examples: int = 64
    benchmark_draws: int = 8
    embedding_dims: Optional[torch.Tensor] = None  # a subset of embedding components (None: all)
    layer_labels: List[str] = field(default_factory=list)
    reshape_transforms: Optional[List[Any]] = None  # one per entry of layers (None: (N, C, *S))
    upsample: Optional[str] = "nearest"
    shift: Optional[str] = None  # CoupledNMFConcepts(shift=...)
    weights_tag: str = "trained"  # "untrained" when no weights were given

    def label(self, layer: Optional[str]) -> str:
        if layer is None:
            return "input"
        if self.layer_labels and layer in self.layers:
            return self.layer_labels[self.layers.index(layer)]
        return layer[len("model.") :] if layer.startswith("model.") else layer


def pick_examples(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of ``k`` examples of different classes where possible (first of each class)."""
    seen, picked = set(), []
    for i, y in enumerate(labels.tolist()):
        if y not in seen:
            seen.add(y)
            picked.append(i)
        if len(picked) == k:
            break
    for i in range(len(labels)):
        if len(picked) == k:
            break
        if i not in picked:
            picked.append(i)
    return torch.tensor(picked)


def randomized_copy(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with every parameterised submodule re-initialised (``reset_parameters``)."""
    clone = copy.deepcopy(model)
    torch.manual_seed(seed)
    for module in clone.modules():
        if hasattr(module, "reset_parameters") and callable(module.reset_parameters):
            module.reset_parameters()
    return clone.eval()


# --------------------------------------------------------------------------- embedding attributions
def embedding_attributions(ctx: Context, n_examples: int = 2, method: str = "activation_gradient") -> None:
    from ..attr import EmbeddingAttribution

    rep = ctx.report
    rep.section(
        "Embedding attributions",
        "EmbeddingAttribution (Bertolini, Clevert & Montanari, 2023) explains an embedding, not a class "
        "score: every embedding component gets its own attribution map at a source layer; the maps are "
        "aggregated over the layer's channels and over the embedding components (mean, mean of absolute "
        "values, or variance) and upsampled to the image.",
    )
    idx = pick_examples(ctx.eval_labels, n_examples)
    x = ctx.eval_images[idx].to(ctx.device)
    sources: List[Optional[str]] = [None] + list(ctx.layers)
    rows, row_labels, row_images = [], [], []
    per_agg = {}
    for agg in AGGREGATORS:
        ea = EmbeddingAttribution(
            ctx.model,
            embedding_layer=ctx.embedding_layer,
            layer=sources,
            method=method,
            embedding_aggregator=agg,
            upsample=ctx.upsample or "nearest",  # the grid shows every map at the image size
            reshape_transform=_source_transforms(ctx),
        )
        maps = ea.attribute(x, embedding_dims=ctx.embedding_dims, show_progress=ctx.progress)
        per_agg[agg] = [m.detach().cpu() for m in maps]
    for i in range(len(idx)):
        for agg in AGGREGATORS:
            rows.append(torch.stack([m[i] for m in per_agg[agg]]))
            row_labels.append(f"{ctx.class_names[int(ctx.eval_labels[idx[i]])]} / {agg}")
            row_images.append(ctx.eval_images[idx[i]])
    fig, _ = viz.visualize_attribution_grid(
        torch.stack(rows),
        torch.stack(row_images),
        col_labels=[ctx.label(s) for s in sources],
        row_labels=row_labels,
        use_pyplot=False,
    )
    dim = _embedding_dim(ctx)
    rep.add_figure(
        fig,
        "embedding_attributions",
        "Embedding attribution grid (aggregator x layer)",
        f"Each row is one held-out example (its class, then the aggregator over the {dim} embedding "
        f"components); each column a source layer, from the input to deeper layers. Maps are activations "
        f"x gradients of every embedding component, averaged over channels, then aggregated over the "
        f"components and copied back onto the image (nearest upsampling). Red is positive, blue negative; "
        f"each map is scaled on its own. The variance aggregator gives the sparsest maps: it lights up "
        f"where embedding components disagree, i.e. the features that distinguish this example.",
    )


def _source_transforms(ctx: Context) -> Optional[List[Any]]:
    """reshape_transform for ``[None (the input)] + ctx.layers``."""
    return None if ctx.reshape_transforms is None else [None] + list(ctx.reshape_transforms)


def _embedding_dim(ctx: Context) -> str:
    if ctx.embedding_layer is None:
        return "output"
    return str(embedding_size(ctx.model, ctx.embedding_layer, ctx.eval_images[:1].to(ctx.device)))


def embedding_size(model: nn.Module, layer: Optional[str], x: torch.Tensor) -> int:
    """Number of components of one example's flattened embedding (``layer`` None: the output)."""
    from .._utils.hooks import ModelGuard
    from .._utils.layers import resolve_layer

    with ModelGuard(model) as guard, torch.no_grad():
        if layer is None:
            return int(guard.forward(model, x)[0].numel())
        captured = guard.capture(resolve_layer(model, layer, "embedding layer"), "embedding layer", stop=True)
        guard.forward(model, x)
        return int(captured.tensor()[0].numel())


# --------------------------------------------------------------------------- representation scores
def score_curves(ctx: Context) -> None:
    from ..metrics import score_curve

    rep = ctx.report
    rep.section(
        "Representation scores",
        "The noise score (Bertolini et al., 2023, eq. 1) is the mean absolute difference between the "
        "normalised embedding attribution of a real input and that of a noise input: high when the "
        "embedding's explanation depends on what the image shows. The noise benchmark (eq. 2) compares two "
        "noise inputs. The variance score (eq. 3) is the variance over embedding components of their "
        "normalised maps: high when components look at different places (a concise embedding).",
    )
    n_examples = ctx.n_score_examples // 4 if ctx.quick else ctx.n_score_examples
    x = ctx.eval_images[:n_examples].to(ctx.device)
    layers: List[Optional[str]] = [None] + list(ctx.layers)
    names = [ctx.label(s) for s in layers]
    random_model = ctx.random_model().to(ctx.device).eval()
    n_draws = 2 if ctx.quick else ctx.benchmark_draws
    curves = {}
    for score in ("noise", "variance"):
        for tag, model in ((ctx.weights_tag, ctx.model), ("random weights", random_model)):
            torch.manual_seed(ctx.seed)
            curves[score, tag] = score_curve(
                model,
                ctx.embedding_layer,
                layers,
                x,
                score=score,
                method="gradient",
                n_benchmark_draws=n_draws,
                embedding_dims=ctx.embedding_dims,
                benchmark=score == "noise" and tag == ctx.weights_tag,
                upsample=ctx.upsample,
                reshape_transform=_source_transforms(ctx),
            )
    tags = (ctx.weights_tag, "random weights")
    trained = curves["noise", ctx.weights_tag]
    fig, _ = viz.visualize_score_curve(
        {tag: curves["noise", tag].values for tag in tags},
        layer_names=names,
        benchmark=trained.benchmark,
        benchmark_band=trained.benchmark_std,
        ylabel="noise score",
        title="Noise score per layer (vanilla gradients)",
        use_pyplot=False,
    )
    rep.add_figure(
        fig,
        "noise_score_curve",
        f"Noise score curve: {ctx.weights_tag} vs random weights",
        f"Mean noise score over {len(x)} held-out images at each source layer, for the {ctx.weights_tag} "
        "network and "
        "for the same architecture with random weights; the dashed line and grey band are the noise "
        f"benchmark (two noise inputs through the {ctx.weights_tag} network, mean +/- std over draws). "
        "The paper's "
        "claim: in deep layers the trained network's curve separates from the random network and from "
        "the benchmark; a score near the benchmark means the embedding explains real images as it "
        "explains noise. All layers of a curve come from one backward pass.",
    )
    fig, _ = viz.visualize_score_curve(
        {tag: curves["variance", tag].values for tag in tags},
        layer_names=names,
        ylabel="variance score",
        ylim=(0.0, 0.25),
        title="Variance score per layer",
        use_pyplot=False,
    )
    rep.add_figure(
        fig,
        "variance_score_curve",
        "Variance score curve",
        "Mean variance score per layer (at most 1/4, Popoviciu's bound: the y-axis spans it). Higher means "
        "the embedding components attend to different regions (more disentangled, concise); the paper "
        "uses it, with the noise score, as a training constraint (see the tutorial "
        "tutorials/04_training_with_score_constraints.ipynb).",
    )
    rep.add_table(
        ["layer"] + [f"{s} ({t})" for s, t in curves],
        [[n] + [float(c.values[i]) for c in curves.values()] for i, n in enumerate(names)],
        caption="Mean scores per layer.",
    )


# --------------------------------------------------------------------------- semantic vectors
def semantic_vectors(ctx: Context) -> object:
    """Fit class semantic vectors at ``ctx.concept_layer``; returns the fitted SemanticVector."""
    from ..concept import SemanticVector

    rep = ctx.report
    rep.section(
        "Semantic vectors",
        "A semantic vector (Gu & Tresp, 2019) is the normalised sum of a concept's binarised, "
        "normalised feature vectors at one layer: the direction in feature space the concept's examples "
        "share. Relevance between two concepts is the cosine of their vectors; the degree of diversity "
        "says how spread out the concept's examples are around it.",
    )
    sv = SemanticVector(ctx.model, ctx.concept_layer, random_state=ctx.seed).fit_from_labels(
        (ctx.fit_images, ctx.fit_labels), n_classes=len(ctx.class_names)
    )
    names = [ctx.class_names[int(c)] for c in sv.concept_names_]
    rel = sv.relevance().cpu()
    fig, _ = viz.visualize_relevance_matrix(
        rel, concept_names=names, title=f"Relevance at {ctx.label(ctx.concept_layer)}", use_pyplot=False
    )
    off = rel.clone().fill_diagonal_(-1)
    a, b = np.unravel_index(int(off.argmax()), off.shape)
    rep.add_figure(
        fig,
        "relevance_matrix",
        "Concept relevance matrix",
        f"cos(v_a, v_b) between the semantic vectors of every pair of classes at layer "
        f"{ctx.label(ctx.concept_layer)}, fitted on {len(ctx.fit_images)} labelled examples. Similar classes "
        f"share features and have high relevance; here the most related pair is {names[a]} / {names[b]} "
        f"({float(rel[a, b]):.2f}). The diagonal is 1 by construction.",
    )
    x = ctx.eval_images.to(ctx.device)
    y = ctx.eval_labels
    sim = sv.similarity(x).cpu()
    retrieval = float((sim.argmax(dim=1) == y).float().mean())
    pert = sv.perturbation_check(x[:200], y[:200]).means()
    rows = [[names[i], int(sv.n_examples_[i]), float(sv.diversity_[i])] for i in range(len(names))]
    rep.add_table(["concept", "examples", "degree of diversity"], rows, caption="Per-concept statistics.")
    rep.add_text(
        f"Nearest semantic vector as a classifier on {len(x)} held-out examples: {retrieval:.1%} agree with "
        "the label (retrieval by cos(phi(x), v_c)). Perturbation check (paper Table 1), mean change of the "
        "ground-truth probability: "
        + ", ".join(f"{k.replace('_', ' ')} {v:+.3f}" for k, v in pert.items())
        + ". Masking the layer with the class's semantic mask should keep (or raise) the probability, a "
        "permuted mask should lower it."
    )
    return sv


# --------------------------------------------------------------------------- semantic saliency
def saliency_comparison(
    ctx: Context,
    sv: object,
    images: torch.Tensor,
    targets: torch.Tensor,
    boxes: Optional[torch.Tensor] = None,
    masks: Optional[torch.Tensor] = None,
    n_show: int = 4,
) -> None:
    """Semantic Guided Backprop / Gradient x Input next to the plain methods, on ``images`` for
    ``targets``; with ``masks`` (bool ``(N, H, W)``), the generalised pointing-game curve."""
    from captum.attr import GuidedBackprop, InputXGradient

    from ..attr import SemanticGradientInput, SemanticGuidedBackprop

    rep = ctx.report
    rep.section(
        "Semantic saliency",
        "Semantic Guided Backprop and Semantic Gradient x Input (Gu & Tresp, 2019, section 5) run the "
        "plain method but, at one layer, let the backward signal through only the units in the target "
        "class's semantic mask (units active for most of the class's examples). This removes evidence "
        "that is not specific to the class.",
    )
    x = images.to(ctx.device)
    t = targets.to(ctx.device)
    methods = {
        "Guided Backprop": GuidedBackprop(ctx.model),
        "Semantic GBP": SemanticGuidedBackprop(ctx.model, ctx.concept_layer, semantic_vectors=sv),
        "Gradient x Input": InputXGradient(ctx.model),
        "Semantic GxI": SemanticGradientInput(ctx.model, ctx.concept_layer, semantic_vectors=sv),
    }
    maps = {}
    for name, method in methods.items():
        maps[name] = method.attribute(x.clone().requires_grad_(), target=t).detach().sum(dim=1).cpu()
    show = slice(0, min(n_show, len(x)))
    grid = torch.stack([torch.stack([maps[m][i] for m in methods]) for i in range(len(x))[show]])
    fig, _ = viz.visualize_attribution_grid(
        grid,
        images[show],
        col_labels=list(methods),
        row_labels=[f"target {ctx.class_names[int(c)]}" for c in targets[show]],
        boxes=None if boxes is None else boxes[show],
        sign="positive",
        use_pyplot=False,
    )
    rep.add_figure(
        fig,
        "semantic_saliency",
        "Plain vs semantic saliency",
        "Each row explains one target class of one image (boxes, when drawn, mark the objects: green is the "
        "target's). Positive evidence only, each map scaled on its own. The semantic variants should "
        "concentrate on the target object and drop evidence for the other one.",
    )
    if masks is None:
        rep.add_note("No object boxes or masks for these images: the pointing-game curve is skipped.")
        return
    from ..metrics import pointing_game_curve

    energies = torch.linspace(0.0, 0.9, 10)
    acc = {}
    for name in methods:
        acc[name] = pointing_game_curve(maps[name], masks=masks, energies=energies)[1].numpy()
    fig, _ = viz.visualize_pointing_game_curve(
        energies, acc, title="Generalised pointing game", use_pyplot=False
    )
    rep.add_figure(
        fig,
        "pointing_game_curve",
        "Generalised pointing-game curve",
        f"For {len(x)} (image, target) pairs: keep the most salient pixels until they hold m% of the map's "
        "positive energy; a hit when they lie in the target's box. m = 0 is the classic pointing game "
        "(the maximum). A method that stays high as m grows puts all its energy on the right object; the "
        "paper reports the semantic variants above the plain ones.",
    )
    rep.add_table(
        ["method", "pointing game (m = 0)", "m = 30%", "m = 50%"],
        [[k, float(v[0]), float(v[3]), float(v[5])] for k, v in acc.items()],
    )


# --------------------------------------------------------------------------- coupled NMF
def coupled_nmf(ctx: Context, n_concepts: int = 10, n_top: int = 6) -> None:
    from ..concept import CoupledNMFConcepts

    rep = ctx.report
    rep.section(
        "Concepts by coupled NMF",
        "Coupled non-negative matrix factorisation (Saini & Papalexakis) factorises the pixels and the "
        "activations of several layers at once with one shared example factor F: each concept is a "
        "pattern of pixels and of neurons in every layer that co-occur in the same examples. No labels "
        "are used to find them; each concept's top examples are then tested with Captum's TCAV.",
    )
    x = ctx.fit_images
    n_top = min(n_top, len(x))
    cnmf = CoupledNMFConcepts(
        n_concepts=n_concepts,
        model=ctx.model,
        layers=list(ctx.layers),
        include_pixels=True,
        solver="hals",
        max_iter=30 if ctx.quick else 100,
        random_state=ctx.seed,
        device=ctx.device,
        shift=ctx.shift,
        reshape_transform=ctx.reshape_transforms,
    ).fit(x.to(ctx.device))
    top = cnmf.top_examples(n_top).cpu()
    masks, _ = cnmf.factor_masks(x.to(ctx.device))
    top_classes = cnmf.top_classes(ctx.fit_labels, k=min(3, len(ctx.class_names))).cpu()
    names = [
        f"c{k}: " + ",".join(ctx.class_names[int(c)] for c in top_classes[k, :2]) for k in range(n_concepts)
    ]
    fig, _ = viz.visualize_concept_grid(
        x[top],
        masks=masks.any(dim=1).cpu(),
        factor_images=cnmf.factor_images().mean(dim=1).cpu(),
        concept_names=names,
        use_pyplot=False,
    )
    rep.add_figure(
        fig,
        "concept_grid",
        "Concepts: pixel factor and top examples",
        f"One row per concept ({n_concepts} concepts, {len(x)} unlabelled images, pixels + "
        f"{', '.join(ctx.label(s) for s in ctx.layers)}). First column: the concept's pixel factor P[:, k] "
        "as an image; then the examples with the largest weight in F. The red outline is the concept's "
        "median mask (pixels where the factor image is above its median). The row label gives the two "
        "classes with the largest summed affinity (labels used only for this read-out).",
    )
    sims = [cnmf.neuron_similarity(j).cpu() for j in range(len(ctx.layers))]
    fig, _ = viz.visualize_similarity_matrices(
        sims, layer_names=[ctx.label(s) for s in ctx.layers], use_pyplot=False
    )
    rep.add_figure(
        fig,
        "neuron_similarity",
        "Concept similarity per layer and eigenvalues",
        "Cosine similarity between the concepts' neuron vectors (columns of O_j) in each layer, and the "
        "eigenvalues of each matrix. The paper finds deeper layers closer to the identity (eigenvalues "
        "near 1): concepts use separate neurons there, while shallow layers share generic features.",
    )
    scores, _ = cnmf.class_scores(ctx.fit_labels)
    scores = scores.cpu()
    shares = scores / scores.sum(dim=1, keepdim=True).clamp_min(1e-12)
    control = scores.argmin(dim=1)  # the class each concept is least about: TCAV's negative control
    tcav_top = _tcav_scores(ctx, cnmf, x, top_classes[:, 0])
    tcav_control = _tcav_scores(ctx, cnmf, x, control)
    layer = ctx.label(ctx.concept_layer)
    rows = []
    for k in range(n_concepts):
        cls = [int(c) for c in top_classes[k]]
        rows.append(
            [
                f"concept {k}",
                ", ".join(f"{ctx.class_names[c]} ({float(shares[k, c]):.0%})" for c in cls),
                tcav_top[k],
                ctx.class_names[int(control[k])],
                tcav_control[k],
            ]
        )
    rep.add_table(
        ["concept", "top classes (share of affinity)", "TCAV, top class", "control class", "TCAV, control"],
        rows,
        caption=f"TCAV validation at {layer}: the TCAV score is the share of held-out examples of a class "
        "whose class score increases along the concept's CAV (the concept's top examples vs random "
        "examples). A concept that matters to its top class scores well above 0.5 there; the control is "
        "the class with the least affinity to the concept.",
    )
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    pos = np.arange(n_concepts)
    ax.bar(pos - 0.2, tcav_top, width=0.4, color="tab:blue", label="top class")
    ax.bar(pos + 0.2, tcav_control, width=0.4, color="tab:gray", label="control class")
    ax.axhline(0.5, color="black", linestyle="--", linewidth=0.8)
    ax.set_xticks(pos)
    ax.set_xticklabels(
        [
            f"c{k}\n{ctx.class_names[int(top_classes[k, 0])]} / {ctx.class_names[int(control[k])]}"
            for k in range(n_concepts)
        ],
        fontsize=7,
    )
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("TCAV score")
    ax.legend(fontsize=8, loc="lower right")
    rep.add_figure(
        fig,
        "tcav_scores",
        "TCAV scores of the discovered concepts",
        f"For each concept (labels: top class / control class), the TCAV sign-count score at {layer} of its "
        "top class (blue) and of its least related class (grey). The paper validates its concepts with "
        "TCAV: a concept that drives its class has a score near 1 for it, while the control class should "
        "not show the same dependence.",
    )


def _tcav_scores(ctx: Context, cnmf: object, x: torch.Tensor, classes: torch.Tensor) -> List[float]:
    """TCAV sign-count score of class ``classes[c]`` for concept ``c`` (vs one random set)."""
    import tempfile

    from captum.concept import TCAV, Concept
    from torch.utils.data import DataLoader

    k = max(1, min(20 if ctx.quick else 40, len(x) // 2))
    gen = torch.Generator().manual_seed(ctx.seed)
    concepts = cnmf.to_captum_concepts(x, k=k, first_id=1)
    random_idx = torch.randperm(len(x), generator=gen)[:k]
    random_concept = Concept(0, "random", DataLoader(x[random_idx], batch_size=k))
    scores: List[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        tcav = TCAV(ctx.model, [ctx.concept_layer], save_path=tmp, show_progress=False)
        for c in range(int(classes.shape[0])):
            cls = int(classes[c])
            inputs = ctx.eval_images[ctx.eval_labels == cls][: 20 if ctx.quick else 60].to(ctx.device)
            if len(inputs) == 0:
                scores.append(float("nan"))
                continue
            result = tcav.interpret(inputs, [[concepts[c], random_concept]], target=cls)
            key = next(iter(result))
            scores.append(float(result[key][ctx.concept_layer]["sign_count"][0]))
    return scores


# --------------------------------------------------------------------------- helpers
def run_section(name: str, fn: Callable, report: Report, *args, **kwargs):
    """Run a section and note its time; a method missing from this installation becomes a note."""
    import time

    start = time.perf_counter()
    try:
        result = fn(*args, **kwargs)
    except ImportError as err:
        report.section(name)
        report.add_note(f"Skipped: {err}")
        return None
    report.add_timing(fn.__name__.strip("_").replace("_", " "), time.perf_counter() - start)
    return result
