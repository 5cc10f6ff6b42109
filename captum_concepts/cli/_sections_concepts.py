"""Report sections: concepts by coupled NMF (validated with TCAV), concept maps and importance."""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch

from .. import visualization as viz
from .._utils.progress import progress_bar
from ._context import Context
from ._sections_labels import plot_labels, text_label
from ._sections_tcav import (
    ALPHA,
    MIN_HELD_OUT,
    MIN_IMAGES_PER_CLASS,
    HeldOutSplit,
    TcavTest,
    format_p,
    gradient_is_image_independent,
    held_out_split,
    inputs_per_class,
    n_random_sets,
    significant,
    tcav_tests,
)


def coupled_nmf(ctx: Context, n_concepts: int = 10, n_top: int = 6) -> None:
    from ..concept import CoupledNMFConcepts

    rep = ctx.report
    rep.section(
        "Concepts by coupled NMF",
        "Coupled non-negative matrix factorisation (Saini & Papalexakis) factorises the pixels and the "
        "activations of several layers at once with one shared example factor F: each concept is a "
        "pattern of pixels and of neurons in every layer that co-occur in the same examples. No labels "
        "are used to find them; each concept is then tested with Captum's TCAV on held-out images.",
    )
    split = held_out_split(ctx)
    x, y = split.fit_images, split.fit_labels
    n_concepts = min(n_concepts, len(x))
    n_top = min(n_top, len(x))
    bar = progress_bar(total=2, show=ctx.progress, desc="coupled NMF", unit="step")
    bar.set_postfix_str("fit")
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
    bar.update()
    bar.set_postfix_str("concept masks")
    top = cnmf.top_examples(n_top).cpu()
    masks, _ = cnmf.factor_masks(x.to(ctx.device))
    bar.update()
    bar.close()
    top_classes = cnmf.top_classes(y, k=min(3, int(y.unique().numel()))).cpu()
    names = [
        f"c{k}: " + ",".join(ctx.class_names[int(c)] for c in top_classes[k, :2]) for k in range(n_concepts)
    ]
    fig, _ = viz.visualize_concept_grid(
        x[top],
        masks=masks.any(dim=1).cpu(),
        factor_images=cnmf.factor_images().mean(dim=1).cpu(),
        labels=plot_labels(names),
        use_pyplot=False,
    )
    layer_names = [ctx.label(s) for s in ctx.layers]
    held = f" ({len(split.test_images)} more held out for TCAV)" if split.split_here else ""
    rep.add_figure(
        fig,
        "concept_grid",
        "Concepts: pixel factor and top examples",
        f"One row per concept ({n_concepts} concepts, {len(x)} unlabelled images{held}, pixels + "
        f"{text_label(', '.join(layer_names))}). First column: the concept's pixel factor P[:, k] "
        "as an image; then the examples with the largest weight in F. The red outline is the concept's "
        "median mask (pixels where the factor image is above its median). The row label gives the two "
        "classes with the largest summed affinity (labels used only for this read-out).",
    )
    sims = [cnmf.neuron_similarity(j).cpu() for j in range(len(ctx.layers))]
    fig, _ = viz.visualize_similarity_matrices(sims, labels=plot_labels(layer_names), use_pyplot=False)
    rep.add_figure(
        fig,
        "neuron_similarity",
        "Concept similarity per layer and eigenvalues",
        "Cosine similarity between the concepts' neuron vectors (columns of O_j) in each layer, and the "
        "eigenvalues of each matrix. The paper finds deeper layers closer to the identity (eigenvalues "
        "near 1): concepts use separate neurons there, while shallow layers share generic features.",
    )
    scores, classes = cnmf.class_scores(y)
    scores = scores.cpu()
    shares = scores / scores.sum(dim=1, keepdim=True).clamp_min(1e-12)
    # the class each concept is least about: TCAV's negative control (a label value, like top_classes)
    control = classes[scores.argmin(dim=1)]
    _tcav_section(ctx, cnmf, split, top_classes, control, shares, classes)


def _tcav_section(
    ctx: Context,
    cnmf: object,
    split: HeldOutSplit,
    top_classes: torch.Tensor,
    control: torch.Tensor,
    shares: torch.Tensor,
    classes: torch.Tensor,
) -> None:
    """TCAV of each concept for its top class and its control class: table and figure."""
    rep = ctx.report
    x = split.fit_images
    n_concepts = int(top_classes.shape[0])
    names = [text_label(c) for c in ctx.class_names]
    counts = split.test_counts(len(ctx.class_names))
    minimum = (
        f"at least {MIN_IMAGES_PER_CLASS} images per class, {MIN_HELD_OUT} of them held out"
        if split.split_here
        else f"at least {MIN_HELD_OUT} held-out images per class"
    )
    k = min(20 if ctx.quick else 40, len(x) // 2)
    wanted = sorted({int(c) for c in top_classes[:, 0]} | {int(c) for c in control})
    present = torch.cat([split.fit_labels, split.test_labels]).unique().tolist()
    short = [int(c) for c in present if counts[int(c)] < MIN_HELD_OUT]
    if k < MIN_HELD_OUT or set(wanted) <= set(short):
        why = (
            f"the {len(x)} fitting images give {k} examples per concept, fewer than {MIN_HELD_OUT}"
            if k < MIN_HELD_OUT
            else f"no tested class has enough images ({minimum})"
        )
        _warn(ctx, f"TCAV not run: {why}. Give more images per class (--max-images, more files).")
        return
    if short:
        _warn(
            ctx,
            f"TCAV leaves out {len(short)} class(es) with too few images ({minimum}): "
            + ", ".join(f"{names[c]} ({counts[c]} held out)" for c in short)
            + ".",
        )
    layer = text_label(ctx.label(ctx.concept_layer))
    probe = int(top_classes[0, 0])
    if gradient_is_image_independent(ctx, split.test_images[:8], probe):
        _warn(
            ctx,
            f"TCAV at {layer} does not depend on the images: the gradient of a class output there is the "
            "same for every image (the layer reaches the output through linear operations only, such as "
            "global average pooling and a linear head), so every image gets the same sign and each score "
            "is 0 or 1. The scores below test the CAVs' directions, not the images; put an earlier layer "
            "last in --layers for a TCAV that reads the images.",
        )
    pairs = [(j, int(top_classes[j, 0])) for j in range(n_concepts)]
    pairs += [(j, int(control[j])) for j in range(n_concepts) if int(control[j]) != int(top_classes[j, 0])]
    tests = tcav_tests(ctx, cnmf, x, split, pairs, k)
    level, sig = significant(tests)
    r_sets = n_random_sets(ctx)

    def cells(j: int, c: int) -> List[object]:
        test = tests.get((j, c))
        if test is None:
            return [names[c], "n/a (too few images)", "n/a", "not tested"]
        verdict = "significant" if sig[j, c] else "not significant"
        score = f"{test.mean:.2f} ± {test.std:.2f} (random {float(test.null.mean()):.2f})"
        return [names[c], score, format_p(test.p_value), verdict]

    share = {int(c): i for i, c in enumerate(classes.tolist())}
    rows = []
    for j in range(n_concepts):
        top = ", ".join(f"{names[int(c)]} ({float(shares[j, share[int(c)]]):.0%})" for c in top_classes[j])
        rows.append([f"concept {j}", top] + cells(j, int(top_classes[j, 0])) + cells(j, int(control[j])))
    scored = {c: t.n_inputs for (_, c), t in tests.items()}
    n_test = sum(scored.values())
    how = (
        f"The images were split per class before fitting: coupled NMF and the CAVs use {len(x)} images, "
        f"TCAV scores {len(split.test_images)} others (a third of each class with {MIN_IMAGES_PER_CLASS} or "
        f"more images, at least {MIN_HELD_OUT}, at most {inputs_per_class(ctx)})."
        if split.split_here
        else f"Coupled NMF and the CAVs use {len(x)} images; TCAV scores the separate held-out set "
        f"({len(split.test_images)} images, at most {inputs_per_class(ctx)} per class)."
    )
    caption = (
        f"TCAV (Kim et al., 2018) at {layer} on held-out images. {how} Each concept's CAV separates its "
        f"{k} top examples from a random set of {k} fitting images; this is repeated with {r_sets} random "
        f"sets, and each class's null distribution is one more random set (set 0) vs the same {r_sets} "
        "random sets. "
        "Score: the share of a class's held-out images whose class logit increases along the CAV "
        f"(sign count), mean ± std over the {r_sets} random sets (in brackets: the mean of the random "
        f"sets' own scores, the null); 0.5 is no relation. p: two-sided "
        f"Student t-test of the concept's {r_sets} scores against the {r_sets} null scores; significant "
        f"when p < {ALPHA}/{len(tests)} = {level:.1e} (alpha {ALPHA}, Bonferroni over the {len(tests)} "
        f"tests here). Scored: the {n_test} held-out images of the {len(scored)} tested classes. Control "
        f"class: the class with the least affinity to the concept. A class is tested only with {minimum} "
        "(else n/a)."
    )
    rep.add_table(
        [
            "concept",
            "top classes (share of affinity)",
            "top class",
            "TCAV",
            "p",
            "test",
            "control class",
            "TCAV",
            "p",
            "test",
        ],
        rows,
        caption=caption,
    )
    _tcav_figure(ctx, tests, sig, top_classes, control, caption_head=caption.split(" Score:")[0])


def _tcav_figure(
    ctx: Context,
    tests: Dict[Tuple[int, int], TcavTest],
    sig: Dict[Tuple[int, int], bool],
    top_classes: torch.Tensor,
    control: torch.Tensor,
    caption_head: str,
) -> None:
    n_concepts = int(top_classes.shape[0])
    groups = {"top class": [], "control class": []}
    for j in range(n_concepts):
        for group, c in (("top class", int(top_classes[j, 0])), ("control class", int(control[j]))):
            groups[group].append(tests.get((j, c)))
    top, low = top_classes[:, 0].tolist(), control.tolist()
    labels = [
        f"c{j}: {_short(ctx.class_names[top[j]])}\nvs {_short(ctx.class_names[low[j]])}"
        for j in range(n_concepts)
    ]
    fig, ax = viz.visualize_tcav_scores(
        {g: [t.mean if t is not None else 0.0 for t in ts] for g, ts in groups.items()},
        labels=plot_labels(labels),
        fig_size=(max(7.0, 1.1 * n_concepts), 3.6),
        use_pyplot=False,
    )
    for container, (g, ts) in zip(ax.containers, groups.items()):
        for j, (bar, t) in enumerate(zip(container, ts)):
            cx = bar.get_x() + bar.get_width() / 2
            if t is None:
                ax.text(cx, 0.02, "n/a", ha="center", va="bottom", fontsize=6, rotation=90)
                continue
            c = int(top_classes[j, 0]) if g == "top class" else int(control[j])
            # the band mean +/- std, cut to the score's range [0, 1]
            band = [[min(t.std, t.mean)], [min(t.std, 1.0 - t.mean)]]
            ax.errorbar(cx, t.mean, yerr=band, color="black", capsize=2, linewidth=0.8)
            null = float(t.null.mean())
            ax.hlines(null, bar.get_x(), bar.get_x() + bar.get_width(), color="black", linestyles=":")
            if not sig[j, c]:
                bar.set_hatch("///")
                bar.set_alpha(0.45)
                ax.text(cx, min(1.0, t.mean + t.std) + 0.01, "n.s.", ha="center", va="bottom", fontsize=7)
    ax.set_ylim(0, 1.12)
    from matplotlib.colors import to_rgb
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    # plain swatches: the first bar of a group may be one of the hatched, pale ones
    handles = [Patch(facecolor=to_rgb(c[0].get_facecolor()), label=g) for c, g in zip(ax.containers, groups)]
    handles.append(Line2D([], [], color="black", linestyle=":", label="random sets (null)"))
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="///", label="not significant"))
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for tick in ax.get_xticklabels():
        tick.set_rotation(35)
        tick.set_horizontalalignment("right")
        tick.set_rotation_mode("anchor")
    rep = ctx.report
    rep.add_figure(
        fig,
        "tcav_scores",
        "TCAV scores of the discovered concepts",
        "For each concept (label: top class vs control class), the mean TCAV score of its top class "
        "(blue) and of its least related class (grey), with the standard deviation over the random sets "
        "as error bars; the dotted line on each bar is the mean score of the random sets themselves (the "
        "null). Hatched, pale bars marked n.s. are not significantly different from the random "
        "concepts (see the table); n/a: the class has too few held-out images. A concept that drives its "
        "class has a significant score near 1 there (near 0: it lowers the class). " + caption_head,
    )


def _short(name: str, width: int = 14) -> str:
    """A class name cut to ``width`` characters for a tick label."""
    name = text_label(name)
    return name if len(name) <= width else name[: width - 1] + "…"


def _warn(ctx: Context, text: str) -> None:
    """A note in the report and the same line on stderr."""
    import sys

    ctx.report.add_note(text)
    print(f"captum-concepts: warning: {text}", file=sys.stderr)


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
        presence.cpu(), images.cpu(), factor_images=cnmf.factor_images().cpu(), use_pyplot=False
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
    fig, _ = viz.visualize_concept_maps(attribution.cpu(), images.cpu(), sign="all", use_pyplot=False)
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
        col_labels=plot_labels(ctx.class_names[int(c)] for c in classes[shown]),
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
