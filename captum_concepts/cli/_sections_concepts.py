"""Report sections: concepts by coupled NMF (validated with TCAV), concept maps and importance."""

from __future__ import annotations

from typing import List

import torch

from .. import visualization as viz
from ._context import Context


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
        labels=names,
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
        sims, labels=[ctx.label(s) for s in ctx.layers], use_pyplot=False
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
    fig, _ = viz.visualize_tcav_scores(
        {"top class": tcav_top, "control class": tcav_control},
        labels=[
            f"c{k}\n{ctx.class_names[int(top_classes[k, 0])]} / {ctx.class_names[int(control[k])]}"
            for k in range(n_concepts)
        ],
        use_pyplot=False,
    )
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
        col_labels=[ctx.class_names[int(c)] for c in classes[shown]],
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
