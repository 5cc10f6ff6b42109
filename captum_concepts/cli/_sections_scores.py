"""Report section: representation scores (noise and variance score curves)."""

from __future__ import annotations

from typing import Any, List, Optional

import torch
from torch import nn

from .. import visualization as viz
from .._utils.progress import progress_bar
from ._context import Context, eval_words, source_transforms
from ._sections_labels import plot_labels, text_label

READING_GUIDE = (
    "How to read the noise score curve. The trained curve above the benchmark band and above the "
    "random-weight curve in deep layers: the paper's claim holds for this model, its embedding explains "
    "real images differently from noise because of what it learned. A curve on the benchmark (inside "
    "the grey band) means the maps of real images differ from noise maps no more than two noise maps "
    "differ from each other. A curve below the random-weight network means training made the "
    "explanation depend less on the image than random weights do (random convolutions act like edge "
    "filters, so their maps follow the image closely, most in shallow layers). Either has three usual "
    "causes, to rule out in this order.\n\n(1) Not enough images: the curve is a mean over the scored "
    "images and the band a spread over a few noise draws; with a few dozen images, differences of a "
    "few hundredths are noise; score more images (--n-examples, --benchmark-draws) before reading "
    "them.\n\n(2) A layer whose map cannot vary: a layer with one spatial position (a 1x1 average pool, a "
    "flattened or linear layer) gives a constant map, which normalises to zeros, so its scores are 0 "
    "by construction and say nothing about the model; very small maps (2x2) have little room to "
    "differ; and inputs far from what the model was trained on (a wrong --mean/--std or image size) "
    "make every layer's maps look alike.\n\n(3) The paper's claim does not hold for this model: the "
    "claim is an empirical finding for the paper's networks, not a law, and a model (or a layer) whose "
    "explanation of the embedding does not depend on the image content is a finding in itself.\n\nThe "
    "variance score is read alike: near 0 the embedding components attend to the same places."
)


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
    positions = spatial_positions(ctx.model, layers, source_transforms(ctx), x[:1])
    flat = [i for i, p in enumerate(positions) if p == 1]
    random_model = ctx.random_model().to(ctx.device).eval()
    n_draws = 2 if ctx.quick else ctx.benchmark_draws
    curves = {}
    runs = [
        (score, tag, model)
        for score in ("noise", "variance")
        for tag, model in ((ctx.weights_tag, ctx.model), ("random weights", random_model))
    ]
    for score, tag, model in progress_bar(runs, show=ctx.progress, desc="score curves", unit="curve"):
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
    if flat:
        its, it = ("its", "It is") if len(flat) == 1 else ("their", "They are")
        rep.add_note(
            ("Layer " if len(flat) == 1 else "Layers ")
            + ", ".join(text_label(names[i]) for i in flat)
            + (" has" if len(flat) == 1 else " have")
            + f" one spatial position: {its} map is constant, so {its} noise and variance scores are 0 "
            f"by construction (not a property of the model). {it} left out of the plots (a gap, "
            "'1 position' under the name) and kept in the table as 0."
        )

    def plotted(values: Any) -> Any:
        """``values`` (L,) with the one-position layers as NaN: a gap, outside the plot's scale."""
        out = torch.as_tensor(values, dtype=torch.float64).clone()
        out[flat] = float("nan")
        return out

    names_plot = plot_labels(n + ("\n(1 position)" if i in flat else "") for i, n in enumerate(names))
    tags = (ctx.weights_tag, "random weights")
    trained = curves["noise", ctx.weights_tag]
    fig, _ = viz.visualize_score_curve(
        {tag: plotted(curves["noise", tag].values) for tag in tags},
        labels=names_plot,
        benchmark=plotted(trained.benchmark),
        benchmark_band=plotted(trained.benchmark_std),
        ylabel="noise score",
        title="Noise score per layer (activations x gradients, mean/mean)",
        use_pyplot=False,
    )
    rep.add_figure(
        fig,
        "noise_score_curve",
        f"Noise score curve: {ctx.weights_tag} vs random weights",
        f"Mean noise score over {len(x)} {eval_words(ctx)}images at each source layer, for the "
        f"{ctx.weights_tag} network and "
        "for the same architecture with random weights; the dashed line and grey band are the noise "
        f"benchmark (two noise inputs through the {ctx.weights_tag} network, mean +/- std over draws). "
        "The paper's "
        "claim: in deep layers the trained network's curve separates from the random network and from "
        "the benchmark; a score near the benchmark means the embedding explains real images as it "
        "explains noise. All layers of a curve come from one backward pass. How to read a curve that "
        "does not separate: see the text below the figure.",
    )
    rep.add_text(READING_GUIDE)
    fig, _ = viz.visualize_score_curve(
        {tag: plotted(curves["variance", tag].values) for tag in tags},
        labels=names_plot,
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
        "uses it, with the noise score, as a training constraint (see the documentation's tutorial "
        "'Training with score constraints').",
    )
    rep.add_table(
        ["layer"] + [f"{s} ({t})" for s, t in curves],
        [[text_label(n)] + [float(c.values[i]) for c in curves.values()] for i, n in enumerate(names)],
        caption="Mean scores per layer"
        + (" (one-position layers score 0 by construction, see the note above)." if flat else "."),
    )


def spatial_positions(
    model: nn.Module, layers: List[Optional[str]], reshape: Optional[List[Any]], x: torch.Tensor
) -> List[int]:
    """Number of spatial positions of each source layer's map (``None``: the input), from one
    forward pass: the product of the sizes after the channel axis of its ``(N, C, *S)`` output."""
    from .._utils.hooks import ModelGuard
    from .._utils.layers import resolve_layer
    from .._utils.layout import apply_reshape

    named = [name for name in layers if name is not None]
    with ModelGuard(model) as guard, torch.no_grad():
        captures = {name: guard.capture(resolve_layer(model, name), "layers") for name in named}
        guard.forward(model, x)
    out = []
    for j, name in enumerate(layers):
        value = x if name is None else captures[name].tensor()
        fn = None if reshape is None else reshape[j]
        shape = tuple(apply_reshape(fn, value).shape) if name is not None else tuple(value.shape)
        out.append(int(torch.Size(shape[2:]).numel()))
    return out
