"""Report section: embedding attributions (aggregator x layer grid)."""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from .. import visualization as viz
from ._context import AGGREGATORS, Context, eval_words, pick_examples, source_transforms
from ._sections_labels import plot_label, plot_labels


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
            reshape_transform=source_transforms(ctx),
        )
        maps = ea.attribute(x, embedding_dims=ctx.embedding_dims, show_progress=ctx.progress)
        per_agg[agg] = [m.detach().cpu() for m in maps]
    for i in range(len(idx)):
        for agg in AGGREGATORS:
            rows.append(torch.stack([m[i] for m in per_agg[agg]]))
            row_labels.append(plot_label(f"{ctx.class_names[int(ctx.eval_labels[idx[i]])]} / {agg}"))
            row_images.append(ctx.eval_images[idx[i]])
    fig, _ = viz.visualize_attribution_grid(
        torch.stack(rows),
        torch.stack(row_images),
        col_labels=plot_labels(ctx.label(s) for s in sources),
        labels=row_labels,
        use_pyplot=False,
    )
    dims = _explained_components(ctx)
    rep.add_figure(
        fig,
        "embedding_attributions",
        "Embedding attribution grid (aggregator x layer)",
        f"Each row is one {eval_words(ctx)}example (its class, then the aggregator over {dims}); each "
        f"column a source layer, from the input to deeper layers. Maps are activations x gradients of each "
        f"of these embedding components, averaged over channels, then aggregated over the "
        f"components and copied back onto the image (nearest upsampling). Red is positive, blue negative; "
        f"each map is scaled on its own. The variance aggregator gives the sparsest maps: it lights up "
        f"where embedding components disagree, i.e. the features that distinguish this example.",
    )


def _explained_components(ctx: Context) -> str:
    """The embedding components the maps aggregate: all of them, or the ``--embedding-dims`` subset."""
    total = embedding_size(ctx.model, ctx.embedding_layer, ctx.eval_images[:1].to(ctx.device))
    where = "output" if ctx.embedding_layer is None else "embedding"
    if ctx.embedding_dims is None:
        return f"the {total} {where} components"
    return f"{len(ctx.embedding_dims)} of the {total} {where} components, drawn at random"


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
