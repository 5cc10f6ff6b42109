"""Demo report sections beyond the papers: concept maps and importance, similarity attribution,
channel masks for semantic saliency."""

from __future__ import annotations

import torch

from .. import visualization as viz
from ._sections import Context


def concept_maps(
    ctx: Context, layers=("block2.pool", "block3.pool"), n_concepts: int = 6, n_show: int = 4
) -> None:
    from ..concept import (
        CoupledNMFConcepts,
        class_importance,
        concept_attribution_maps,
        concept_importance,
        concept_presence_maps,
    )

    rep = ctx.report
    rep.section(
        "Concept maps and importance",
        "Beyond the paper: for coupled-NMF concepts, where each concept is in an image (presence maps, "
        "as Deep Feature Factorization reads one layer), where its evidence comes from (attribution "
        "maps of the concept coefficients) and how much it drives each class (gradient x activation "
        "in concept space, with a residual so the terms add up exactly).",
    )
    cnmf = CoupledNMFConcepts(
        n_concepts, ctx.model, layers=list(layers), solver="hals", max_iter=60, random_state=ctx.seed
    ).fit(ctx.fit_images.to(ctx.device))
    images = ctx.eval_images[:n_show].to(ctx.device)
    presence = concept_presence_maps(cnmf, images, layer=0)
    fig, _ = viz.visualize_concept_maps(
        images.cpu(), presence.cpu(), factor_images=cnmf.factor_images().cpu(), use_pyplot=False
    )
    rep.add_figure(
        fig,
        "concept_presence_maps",
        "Concept presence maps",
        f"Top row: each concept's pixel factor. Below: for {n_show} test digits, the non-negative "
        f"coefficients of each concept's neuron factor at every position of {layers[0]} that best "
        "reconstruct the activations there, upsampled to the image (green: present).",
    )
    attribution = concept_attribution_maps(cnmf, images, layer=len(layers) - 1)
    fig, _ = viz.visualize_concept_maps(images.cpu(), attribution.cpu(), sign="all", use_pyplot=False)
    rep.add_figure(
        fig,
        "concept_attribution_maps",
        "Concept attribution maps",
        f"Gradient x input of each concept's coefficient at {layers[-1]} (least squares on the neuron "
        "factors, a linear function of the activations), all concepts from one forward pass: red pixels "
        "raise the concept, blue ones lower it.",
    )
    n_eval = min(len(ctx.eval_images), 200)
    x, y = ctx.eval_images[:n_eval].to(ctx.device), ctx.eval_labels[:n_eval].to(ctx.device)
    result = concept_importance(cnmf, x, target=y, layer=len(layers) - 1)
    gap = float((result.importance.sum(1) + result.residual - result.total).abs().max())
    imp, res, classes = class_importance(result, y)
    shown = slice(0, min(5, len(classes)))
    fig, _ = viz.visualize_concept_importance(
        imp[shown].cpu(),
        res[shown].cpu(),
        class_names=[ctx.class_names[int(c)] for c in classes[shown]],
        use_pyplot=False,
    )
    rep.add_figure(
        fig,
        "concept_importance",
        "Concept importance per class",
        f"Mean over the test digits of each class of u_k times the inner product of the true logit's "
        f"gradient at {layers[-1]} with concept k's neuron factor, and the residual (grey). Concepts plus "
        f"residual equal the layer's gradient x activation total (largest gap {gap:.1e}); one backward "
        "pass per target for all concepts.",
    )


def similarity(ctx: Context, n_pairs: int = 3) -> None:
    from ..attr import SimilarityAttribution

    rep = ctx.report
    rep.section(
        "Similarity attribution",
        "Beyond the papers: which pixels of two images make their embeddings similar. SimilarityAttribution "
        "explains the cosine of the embeddings of a pair on both sides at once, in one forward and one "
        "backward pass (the exact gradient of the cosine weights each side's embedding dimensions); "
        "correspondence maps link the parts of one image to the parts of the other.",
    )
    order = torch.argsort(ctx.eval_labels)
    first = order[torch.arange(n_pairs) * (len(order) // n_pairs)]
    second = order[(torch.arange(n_pairs) * (len(order) // n_pairs) + 1) % len(order)]
    a, b = ctx.eval_images[first].to(ctx.device), ctx.eval_images[second].to(ctx.device)
    sa = SimilarityAttribution(ctx.model, embedding_layer=ctx.embedding_layer, similarity="cosine")
    maps_a, maps_b = sa.attribute(a, b)
    fig, _ = viz.visualize_similarity_maps(
        a.cpu(),
        b.cpu(),
        maps_a.cpu(),
        maps_b.cpu(),
        scores=sa.similarity_scores(a, b).cpu(),
        use_pyplot=False,
    )
    rep.add_figure(
        fig,
        "similarity_maps",
        "Similarity maps",
        f"Pairs of test digits of the same class; s is the cosine of their {ctx.embedding_layer} embeddings. "
        "Each map is the gradient x input of s w.r.t. that side (red raises the similarity).",
    )
    sl = SimilarityAttribution(
        ctx.model,
        embedding_layer=ctx.embedding_layer,
        layer="block2.pool",
        similarity="cosine",
        upsample=None,
    )
    corr = sl.correspondence(a[:1], b[:1])
    side = int(round(corr.shape[1] ** 0.5))
    fig, _ = viz.visualize_correspondence(
        a[0].cpu(), b[0].cpu(), corr[0].cpu(), grid_a=(side, side), k=8, use_pyplot=False
    )
    rep.add_figure(
        fig,
        "similarity_correspondence",
        "Correspondence of two digits",
        f"The 8 strongest links M(p, q) = sum_d m_d^a(p) m_d^b(q) / (|z_a| |z_b|) between the {side}x{side} "
        "positions of block2.pool of the first pair (BiLRP-style second-order explanation); thicker lines "
        f"are stronger. The entries sum to {float(corr.sum()):.3f} (the cosine is "
        f"{float(sl.similarity_scores(a[:1], b[:1])):.3f}; they differ by the biases' share).",
    )


def channel_masks_comparison(
    ctx: Context, sv: object, images: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor
) -> None:
    from captum.attr import GuidedBackprop

    from ..attr import SemanticGuidedBackprop
    from ..metrics import pointing_game_curve

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
    energies = torch.linspace(0.0, 0.9, 10)
    acc = {k: pointing_game_curve(v, masks=masks, energies=energies)[1].numpy() for k, v in maps.items()}
    fig, _ = viz.visualize_pointing_game_curve(
        energies, acc, title="Paper rule vs channel masks", use_pyplot=False
    )
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
