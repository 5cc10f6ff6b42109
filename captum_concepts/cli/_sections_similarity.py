"""Report section: similarity attribution of image pairs and their correspondence."""

from __future__ import annotations

import torch

from .. import visualization as viz
from ._context import Context


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
        maps_a.cpu(),
        maps_b.cpu(),
        a.cpu(),
        b.cpu(),
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
        corr[0].cpu(), a[0].cpu(), b[0].cpu(), grid_a=(side, side), k=8, use_pyplot=False
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
