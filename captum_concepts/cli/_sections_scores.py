"""Report section: representation scores (noise and variance score curves)."""

from __future__ import annotations

from typing import List, Optional

import torch

from .. import visualization as viz
from ._context import Context, source_transforms


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
                n_benchmark_draws=n_draws,
                embedding_dims=ctx.embedding_dims,
                benchmark=score == "noise" and tag == ctx.weights_tag,
                upsample=ctx.upsample,
                reshape_transform=source_transforms(ctx),
            )
    tags = (ctx.weights_tag, "random weights")
    trained = curves["noise", ctx.weights_tag]
    fig, _ = viz.visualize_score_curve(
        {tag: curves["noise", tag].values for tag in tags},
        labels=names,
        benchmark=trained.benchmark,
        benchmark_band=trained.benchmark_std,
        ylabel="noise score",
        title="Noise score per layer (activations x gradients, mean/mean)",
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
        labels=names,
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
