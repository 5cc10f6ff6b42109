"""Report sections: semantic vectors, semantic saliency and its channel-mask extension."""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch

from .. import visualization as viz
from ._context import Context
from ._sections_labels import plot_label, plot_labels, text_label


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
    names = [text_label(ctx.class_names[int(c)]) for c in sv.concept_names_]
    layer = text_label(ctx.label(ctx.concept_layer))
    rel = sv.relevance().cpu()
    fig, _ = viz.visualize_relevance_matrix(
        rel, labels=plot_labels(names), title=plot_label(f"Relevance at {layer}"), use_pyplot=False
    )
    off = rel.clone().fill_diagonal_(-1)
    a, b = np.unravel_index(int(off.argmax()), off.shape)
    rep.add_figure(
        fig,
        "relevance_matrix",
        "Concept relevance matrix",
        f"cos(v_a, v_b) between the semantic vectors of every pair of classes at layer "
        f"{layer}, fitted on {len(ctx.fit_images)} labelled examples. Similar classes "
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
        labels=plot_labels(f"target {ctx.class_names[int(c)]}" for c in targets[show]),
        boxes=None if boxes is None else boxes[show],
        sign="positive",
        use_pyplot=False,
    )
    rep.add_figure(
        fig,
        "semantic_saliency",
        "Plain vs semantic saliency",
        "Each row explains one target class of one image"
        + (
            " (its label); positive evidence only, each map scaled on its own. The semantic variants should "
            "keep the evidence specific to the target class and drop what it shares with other classes."
            if boxes is None
            else " (boxes mark the objects: green is the target's). Positive evidence only, each map scaled "
            "on its own. The semantic variants should concentrate on the target object and drop evidence "
            "for the other one."
        ),
    )
    if masks is None:
        rep.add_note("No object boxes or masks for these images: the pointing-game curve is skipped.")
        return
    acc, fig = _pointing_game_curves(maps, masks, "Generalised pointing game")
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


def channel_masks_comparison(
    ctx: Context, sv: object, images: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor
) -> None:
    from captum.attr import GuidedBackprop

    from ..attr import SemanticGuidedBackprop

    rep = ctx.report
    rep.section(
        "Channel masks (our extension)",
        "The paper's semantic mask 1[r_c > 0.5] is per unit, i.e. per channel and position, so it encodes "
        "where the class's evidence was in the fitting images. Our extension SemanticVector.masks(mode="
        "'channel') keeps whole channels whose position-averaged rate for the class is above the average "
        "over classes, so it survives the object moving. The pointing game compares both rules.",
    )
    x, t = images.to(ctx.device), targets.to(ctx.device)
    maps = {"Guided Backprop": GuidedBackprop(ctx.model).attribute(x, target=t).detach().sum(1).cpu()}
    for name, mask in (
        ("paper rule r_c > 0.5", sv.masks(0.5)),
        ("ours: channel masks", sv.masks(mode="channel")),
    ):
        method = SemanticGuidedBackprop(ctx.model, ctx.concept_layer, mask)
        maps[f"Semantic GBP, {name}"] = method.attribute(x, target=t).detach().sum(1).cpu()
    acc, fig = _pointing_game_curves(maps, masks, "Paper rule vs channel masks")
    rep.add_figure(
        fig,
        "channel_masks_pointing_game",
        "Pointing game: per-unit vs channel masks",
        f"Generalised pointing game of Guided Backprop and of Semantic Guided Backprop with each mask rule "
        f"at {ctx.concept_layer}, on {len(x)} (canvas, target) pairs of the two-digit canvases.",
    )
    rep.add_table(
        ["method", "pointing game (m = 0)", "m = 30%", "m = 50%", "mean over m"],
        [[k, float(v[0]), float(v[3]), float(v[5]), float(v.mean())] for k, v in acc.items()],
    )


def _pointing_game_curves(maps: Dict[str, torch.Tensor], masks: torch.Tensor, title: str):
    """Generalised pointing-game accuracy of every map at energies 0, 0.1, ..., 0.9, and its figure."""
    from ..metrics import pointing_game_curve

    energies = torch.linspace(0.0, 0.9, 10)
    acc = {k: pointing_game_curve(v, masks=masks, energies=energies)[1].numpy() for k, v in maps.items()}
    fig, _ = viz.visualize_pointing_game_curve(energies, acc, title=title, use_pyplot=False)
    return acc, fig
